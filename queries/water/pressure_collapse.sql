-- description: Pressure fell by more than 30 % within 5 minutes: suspected main burst (configurable proposal)
-- level: red
SELECT district, device_id, max(pressure_mpa) AS max_pressure_mpa,
       last_value(pressure_mpa ORDER BY ts) AS last_pressure_mpa
FROM water
WHERE kind = 'pressure'
GROUP BY tumble(ts, INTERVAL '5 minutes'), district, device_id
HAVING last_value(pressure_mpa ORDER BY ts) < 0.7 * max(pressure_mpa)
