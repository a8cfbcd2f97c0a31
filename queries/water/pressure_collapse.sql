-- description: Pressure fell by more than 30 % within 5 minutes: suspected main burst (configurable proposal)
-- level: red
SELECT district, device_id, max(pressure_mpa) AS max_pressure_mpa, min(pressure_mpa) AS min_pressure_mpa
FROM water
WHERE kind = 'pressure'
GROUP BY tumble(ts, INTERVAL '5 minutes'), district, device_id
HAVING min(pressure_mpa) < 0.7 * max(pressure_mpa)
