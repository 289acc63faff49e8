-- cutover's journal. Created in the journal schema (default `cutover`) of the
-- target database: the migration runs with search_path set to that schema.
-- clear, copy, restore and verify never touch this schema.

CREATE TABLE runs (
    id               uuid PRIMARY KEY,
    plan_path        text NOT NULL,
    plan_fingerprint text NOT NULL,
    source_identity  jsonb NOT NULL,
    target_identity  jsonb NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at      timestamptz,
    -- running | done | failed | interrupted | rolled_back | abandoned
    status           text NOT NULL,
    operator_user    text NOT NULL,
    operator_host    text NOT NULL,
    operator_pid     integer NOT NULL
);

CREATE TABLE stage_events (
    id         bigserial PRIMARY KEY,
    run_id     uuid NOT NULL REFERENCES runs (id),
    stage      text NOT NULL,
    -- started | done | failed | undo_started | undone | undo_failed
    event      text NOT NULL,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    error      text,
    artefacts  jsonb
);
CREATE INDEX stage_events_run_stage ON stage_events (run_id, stage, id);

-- Work items inside a stage (the copy's pre-data, each table, post-data...).
-- An item's `done` row is written in the same transaction as its effect.
CREATE TABLE item_progress (
    run_id      uuid NOT NULL REFERENCES runs (id),
    stage       text NOT NULL,
    item        text NOT NULL,
    state       text NOT NULL,
    rows        bigint,
    bytes       bigint,
    detail      jsonb,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run_id, stage, item)
);

-- The sync proof writes a random token here and reads it through each consumer.
CREATE TABLE sentinels (
    token      text PRIMARY KEY,
    run_id     uuid NOT NULL REFERENCES runs (id),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
