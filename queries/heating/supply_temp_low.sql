-- description: Station secondary supply far below the 75 °C radiator design temperature (GB 50736-2012 §5.3.1): under 55 °C yellow, under 45 °C orange
-- level: yellow
-- for: 2
SELECT district, device_id, avg(supply_temp_c) AS avg_supply_temp_c,
       avg(supply_temp_c - return_temp_c) AS avg_delta_t_c,
       CASE WHEN avg(supply_temp_c) < 45 THEN 'orange' ELSE 'yellow' END AS level
FROM heating
WHERE kind = 'station'
GROUP BY tumble(ts, INTERVAL '15 minutes'), district, device_id
HAVING avg(supply_temp_c) < 55
