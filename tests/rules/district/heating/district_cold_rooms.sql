-- description: Cold homes across a district: rooms of at least 3 homes below the 18 °C heating-season minimum (GB/T 33833-2017 §5.1) within one hour (a district rule, for tests/nats.rs)
-- level: yellow
SELECT district, count(DISTINCT device_id) AS cold_rooms, avg(room_temp_c) AS avg_room_temp_c
FROM heating
WHERE kind = 'room' AND room_temp_c < 18
GROUP BY tumble(ts, INTERVAL '1 hour'), district
HAVING count(DISTINCT device_id) >= 3
