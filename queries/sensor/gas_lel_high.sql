-- description: Combustible gas at or above 5 %LEL; first alarm at 25, second at 50 (GB 50493-2019 §5.5.2; blue/yellow grading is a configurable proposal)
-- level: blue
-- key: district, device_id
-- resolve: 3
SELECT district, device_id, value AS gas_lel,
       CASE WHEN value >= 50 THEN 'red'
            WHEN value >= 25 THEN 'orange'
            WHEN value >= 10 THEN 'yellow'
            ELSE 'blue' END AS level
FROM sensor
WHERE kind = 'gas_lel' AND value >= 5
