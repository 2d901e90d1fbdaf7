-- Automations (issue 18 item 2): "when a trigger fires, run these steps", owned by
-- services/automations (the API writes definitions, pauses and resumes).
--
-- automations: one row per automation; `version` is the current one (new runs start on
-- it), the trigger columns are copied from it for the lookups of each event.
CREATE TABLE automations (
    id               uuid PRIMARY KEY,
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused')),
    version          integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    trigger_kind     text NOT NULL CHECK (trigger_kind IN ('joined', 'event', 'anniversary')),
    trigger_list_id  uuid,
    trigger_event    text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX automations_by_list ON automations (trigger_list_id) WHERE trigger_list_id IS NOT NULL;
CREATE INDEX automations_by_event ON automations (trigger_event) WHERE trigger_event IS NOT NULL;

-- Every version of a definition, kept: a run in flight keeps the version it started on.
CREATE TABLE automation_versions (
    automation_id  uuid NOT NULL REFERENCES automations (id) ON DELETE CASCADE,
    version        integer NOT NULL,
    definition     jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (automation_id, version)
);

-- One run per (automation, enrol key): the person's address, or address and year for an
-- anniversary. `step` is the next step to run and `due_at` when: the durable timer, by
-- the service's clock (never in Kafka or in memory).
CREATE TABLE automation_runs (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    automation_id  uuid NOT NULL REFERENCES automations (id) ON DELETE CASCADE,
    version        integer NOT NULL,
    enrol_key      text NOT NULL,
    email          text NOT NULL,
    recipient_id   bigint,
    trigger        text NOT NULL,
    data           jsonb NOT NULL DEFAULT '{}',
    status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'completed', 'stopped')),
    step           integer NOT NULL DEFAULT 0,
    due_at         timestamptz NOT NULL,
    stop_reason    text,
    goal_at        timestamptz,
    started_at     timestamptz NOT NULL,
    finished_at    timestamptz,
    UNIQUE (automation_id, enrol_key)
);
CREATE INDEX automation_runs_due ON automation_runs (due_at) WHERE status = 'active';
CREATE INDEX automation_runs_email ON automation_runs (email) WHERE status = 'active';

-- Each (run, step) done, exactly once (the primary key), in the transaction that moves
-- the run on and, for a send, writes its outbox row.
CREATE TABLE automation_steps (
    run_id      bigint NOT NULL REFERENCES automation_runs (id) ON DELETE CASCADE,
    step        integer NOT NULL,
    kind        text NOT NULL,
    outcome     text NOT NULL,
    message_id  uuid,
    done_at     timestamptz NOT NULL,
    PRIMARY KEY (run_id, step)
);

-- message.requested to publish: written with the step, published after, marked; rows the
-- tracker has not accounted for are published again after a broker loss (same message id
-- and idempotency key: the dispatcher sends each once).
CREATE TABLE automation_outbox (
    message_id    uuid PRIMARY KEY,
    run_id        bigint NOT NULL REFERENCES automation_runs (id) ON DELETE CASCADE,
    step          integer NOT NULL,
    key           text NOT NULL,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    publishes     integer NOT NULL DEFAULT 0,
    UNIQUE (run_id, step)
);
CREATE INDEX automation_outbox_unpublished ON automation_outbox (created_at)
    WHERE published_at IS NULL;
-- A broker loss looks back this way (a bounded window, not the whole history).
CREATE INDEX automation_outbox_created ON automation_outbox (created_at);

-- Imports whose new recipients were enrolled into an automation (swept from import_jobs
-- too, so an `import.completed` the broker lost still enrols them).
CREATE TABLE automation_imports (
    automation_id  uuid NOT NULL REFERENCES automations (id) ON DELETE CASCADE,
    import_id      uuid NOT NULL,
    enrolled       integer NOT NULL,
    at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (automation_id, import_id)
);

-- Which import inserted a recipient (NULL: added otherwise, or before this column). The
-- importer sets `mailfleet.import_id` in its transaction; the default reads it, so the
-- binary COPY and the upsert fill it with no column of their own. No index: it is read
-- once per import, within the list (the list's index), by services/automations.
ALTER TABLE recipients ADD COLUMN import_id uuid
    DEFAULT NULLIF(current_setting('mailfleet.import_id', true), '')::uuid;
