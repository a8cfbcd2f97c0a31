-- description: Turbidity above 0.5 NTU; the drinking-water limit is 1 NTU (GB 5749-2022 table 1); graded 0.5/0.8/1/3 NTU (configurable proposal)
-- level: blue
SELECT district, device_id, avg(turbidity_ntu) AS avg_turbidity_ntu,
       CASE WHEN avg(turbidity_ntu) > 3 THEN 'red'
            WHEN avg(turbidity_ntu) > 1 THEN 'orange'
            WHEN avg(turbidity_ntu) > 0.8 THEN 'yellow'
            ELSE 'blue' END AS level
FROM water
WHERE kind = 'quality'
GROUP BY tumble(ts, INTERVAL '15 minutes'), district, device_id
HAVING avg(turbidity_ntu) > 0.5
