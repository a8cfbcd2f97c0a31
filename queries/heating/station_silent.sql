-- description: Heat exchange station silent for 10 minutes: an unsupervised station cannot report a fault (practice)
-- level: orange
SELECT table_name, district, device_id, last_seen, silent_s
FROM devices
WHERE table_name = 'heating' AND device_id LIKE 'hs-%' AND silent_s >= 600
