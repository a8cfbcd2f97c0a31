-- description: Free chlorine above 2 mg/L, the limit of GB 5749-2022 table 2 (over-dosing; taste and by-products)
-- level: yellow
-- for: 2
SELECT district, device_id, avg(chlorine_mg_l) AS avg_chlorine_mg_l
FROM water
WHERE kind = 'quality'
GROUP BY tumble(ts, INTERVAL '15 minutes'), district, device_id
HAVING avg(chlorine_mg_l) > 2
