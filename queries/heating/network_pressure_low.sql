-- description: Secondary network supply pressure below 0.2 MPa, the bottom of the normal 0.2-0.6 MPa band: leak or burst (practice)
-- level: orange
-- for: 2
SELECT district, device_id, avg(supply_pressure_mpa) AS avg_supply_pressure_mpa
FROM heating
WHERE kind = 'station'
GROUP BY tumble(ts, INTERVAL '5 minutes'), district, device_id
HAVING avg(supply_pressure_mpa) < 0.2
