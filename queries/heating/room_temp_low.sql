-- description: Room below the 18 °C heating-season minimum (GB/T 33833-2017 §5.1); hourly average graded 18/17/16/14 °C (configurable proposal)
-- level: blue
SELECT district, device_id, avg(room_temp_c) AS avg_room_temp_c,
       CASE WHEN avg(room_temp_c) < 14 THEN 'red'
            WHEN avg(room_temp_c) < 16 THEN 'orange'
            WHEN avg(room_temp_c) < 17 THEN 'yellow'
            ELSE 'blue' END AS level
FROM heating
WHERE kind = 'room'
GROUP BY tumble(ts, INTERVAL '1 hour'), district, device_id
HAVING avg(room_temp_c) < 18
