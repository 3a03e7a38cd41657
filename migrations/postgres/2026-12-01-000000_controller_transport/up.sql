-- How a controller is reached: 'tcp' (Modbus TCP to endpoint), 'rtu-over-tcp' (RTU frames to
-- endpoint) or 'rtu' (a local serial line; endpoint is then the empty string). The serial
-- keys are stored as written; unset ones take the Modbus serial-line defaults when the link
-- is built.
ALTER TABLE controllers ADD COLUMN transport TEXT NOT NULL DEFAULT 'tcp'
    CHECK (transport IN ('tcp', 'rtu-over-tcp', 'rtu'));
ALTER TABLE controllers ADD COLUMN serial_device TEXT;
ALTER TABLE controllers ADD COLUMN serial_baud BIGINT;
ALTER TABLE controllers ADD COLUMN serial_parity TEXT CHECK (serial_parity IN ('none', 'even', 'odd'));
ALTER TABLE controllers ADD COLUMN serial_data_bits BIGINT;
ALTER TABLE controllers ADD COLUMN serial_stop_bits BIGINT;
