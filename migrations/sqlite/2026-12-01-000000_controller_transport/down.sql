ALTER TABLE controllers DROP COLUMN serial_stop_bits;
ALTER TABLE controllers DROP COLUMN serial_data_bits;
ALTER TABLE controllers DROP COLUMN serial_parity;
ALTER TABLE controllers DROP COLUMN serial_baud;
ALTER TABLE controllers DROP COLUMN serial_device;
ALTER TABLE controllers DROP COLUMN transport;
