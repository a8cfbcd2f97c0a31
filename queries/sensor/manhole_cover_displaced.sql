-- description: Manhole cover tilted: over 5° shifted, over 10° displaced, 45° or more open (vendor practice, grading is a configurable proposal)
-- level: blue
-- key: district, device_id
-- resolve: 2
SELECT district, device_id, value AS tilt_deg,
       CASE WHEN value >= 45 THEN 'red'
            WHEN value > 10 THEN 'orange'
            ELSE 'blue' END AS level
FROM sensor
WHERE kind = 'manhole_tilt' AND value > 5
