DROP TABLE command_ids;
