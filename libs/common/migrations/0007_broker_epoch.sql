-- Bumped whenever a service had to (re-)create Kafka topics: the broker lost its state.
-- Consumers watch it and re-read the re-created topics from their start, whatever
-- positions or committed offsets survived from the lost logs.
CREATE TABLE broker_epoch (
    id          smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    epoch       bigint NOT NULL DEFAULT 0,
    changed_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO broker_epoch (id, epoch) VALUES (1, 0);
