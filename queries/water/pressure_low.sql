-- description: Network pressure below the 0.14 MPa service minimum (CJ/T 316-2009 §6.2); graded 0.16/0.14/0.10/0.05 MPa (configurable proposal)
-- level: blue
-- resolve: 3
SELECT district, device_id, avg(pressure_mpa) AS avg_pressure_mpa,
       CASE WHEN avg(pressure_mpa) < 0.05 THEN 'red'
            WHEN avg(pressure_mpa) < 0.10 THEN 'orange'
            WHEN avg(pressure_mpa) < 0.14 THEN 'yellow'
            ELSE 'blue' END AS level
FROM water
WHERE kind = 'pressure'
GROUP BY tumble(ts, INTERVAL '1 minute'), district, device_id
HAVING avg(pressure_mpa) < 0.16
