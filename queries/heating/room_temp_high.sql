-- description: Room above 24 °C, the top of the comfortable range (GB/T 33833-2017 design range 18-24 °C; hourly average; overheating wastes heat and hints at a failed regulating valve)
-- level: blue
-- for: 2
-- resolve: 2
SELECT district, device_id, avg(room_temp_c) AS avg_room_temp_c
FROM heating
WHERE kind = 'room'
GROUP BY tumble(ts, INTERVAL '1 hour'), district, device_id
HAVING avg(room_temp_c) > 24
