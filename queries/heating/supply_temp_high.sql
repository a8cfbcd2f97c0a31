-- description: Secondary supply above 85 °C for radiator systems (GB 50736-2012 §5.3.1); above 95 °C orange
-- level: yellow
SELECT district, device_id, max(supply_temp_c) AS max_supply_temp_c,
       CASE WHEN max(supply_temp_c) > 95 THEN 'orange' ELSE 'yellow' END AS level
FROM heating
WHERE kind = 'station'
GROUP BY tumble(ts, INTERVAL '5 minutes'), district, device_id
HAVING max(supply_temp_c) > 85
