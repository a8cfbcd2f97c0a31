-- description: Hourly AQI above 100: light (101-150) blue, moderate (151-200) yellow, heavy (201-300) orange, severe (>300) red (HJ 633-2012)
-- level: blue
SELECT district, device_id, avg(value) AS avg_aqi,
       CASE WHEN avg(value) > 300 THEN 'red'
            WHEN avg(value) > 200 THEN 'orange'
            WHEN avg(value) > 150 THEN 'yellow'
            ELSE 'blue' END AS level
FROM sensor
WHERE kind = 'aqi'
GROUP BY tumble(ts, INTERVAL '1 hour'), district, device_id
HAVING avg(value) > 100
