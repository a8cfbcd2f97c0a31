-- description: Expressway congested: average speed 35-50 km/h light (blue), 20-35 moderate (yellow), 20 or less severe (orange) (urban road congestion grading)
-- level: blue
-- for: 2
-- resolve: 2
SELECT district, device_id, avg(speed_kmh) AS avg_speed_kmh,
       CASE WHEN avg(speed_kmh) <= 20 THEN 'orange'
            WHEN avg(speed_kmh) <= 35 THEN 'yellow'
            ELSE 'blue' END AS level
FROM traffic
WHERE road_class = 'expressway'
GROUP BY tumble(ts, INTERVAL '5 minutes'), district, device_id
HAVING avg(speed_kmh) <= 50
