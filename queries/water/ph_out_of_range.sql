-- description: pH outside 6.5-8.5 (GB 5749-2022 table 1)
-- level: yellow
SELECT district, device_id, avg(ph) AS avg_ph
FROM water
WHERE kind = 'quality'
GROUP BY tumble(ts, INTERVAL '15 minutes'), district, device_id
HAVING avg(ph) < 6.5 OR avg(ph) > 8.5
