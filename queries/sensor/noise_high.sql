-- description: Hourly equivalent noise level LAeq above 70 dB(A) by day or 55 dB(A) at night (22:00-06:00 Beijing time), the class 4a limits of GB 3096-2008, the loosest a residential area may have; 10 dB(A) over is yellow (zones with stricter classes need their own rule)
-- level: blue
-- resolve: 2
SELECT district, device_id,
       round(10 * log10(avg(power(10.0, value / 10))), 1) AS laeq_db,
       CASE WHEN (date_part('hour', min(ts)) + 8) % 24 >= 22 OR (date_part('hour', min(ts)) + 8) % 24 < 6
            THEN 55 ELSE 70 END AS limit_db,
       CASE WHEN 10 * log10(avg(power(10.0, value / 10)))
                 > 10 + CASE WHEN (date_part('hour', min(ts)) + 8) % 24 >= 22 OR (date_part('hour', min(ts)) + 8) % 24 < 6
                             THEN 55 ELSE 70 END
            THEN 'yellow' ELSE 'blue' END AS level
FROM sensor
WHERE kind = 'noise'
GROUP BY tumble(ts, INTERVAL '1 hour'), district, device_id
HAVING 10 * log10(avg(power(10.0, value / 10)))
       > CASE WHEN (date_part('hour', min(ts)) + 8) % 24 >= 22 OR (date_part('hour', min(ts)) + 8) % 24 < 6
              THEN 55 ELSE 70 END
