-- description: Collector or local road congested: average speed 15-25 km/h light (blue), 10-15 moderate (yellow), 10 or less severe (orange) (urban road congestion grading)
-- level: blue
-- for: 2
-- resolve: 2
SELECT district, device_id, avg(speed_kmh) AS avg_speed_kmh, avg(occupancy_pct) AS avg_occupancy_pct,
       CASE WHEN avg(speed_kmh) <= 10 THEN 'orange'
            WHEN avg(speed_kmh) <= 15 THEN 'yellow'
            ELSE 'blue' END AS level
FROM traffic
WHERE road_class IN ('collector', 'local')
GROUP BY tumble(ts, INTERVAL '5 minutes'), district, device_id
HAVING avg(speed_kmh) <= 25
