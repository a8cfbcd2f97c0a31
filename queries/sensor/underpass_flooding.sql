-- description: Water standing in a road underpass: 15 / 27 / 40 / 50 cm (about 30 cm stops traffic, Beijing practice; grading is a configurable proposal)
-- level: blue
-- resolve: 5
SELECT district, device_id, max(value) AS max_depth_cm,
       CASE WHEN max(value) >= 50 THEN 'red'
            WHEN max(value) >= 40 THEN 'orange'
            WHEN max(value) >= 27 THEN 'yellow'
            ELSE 'blue' END AS level
FROM sensor
WHERE kind = 'water_depth'
GROUP BY tumble(ts, INTERVAL '1 minute'), district, device_id
HAVING max(value) >= 15
