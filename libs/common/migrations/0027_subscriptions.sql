-- Issue 15 items 3 and 4: subscription with double opt-in, consent records, the
-- preference centre.

-- A recipient's standing on its list. Campaigns plan only 'active' rows: 'unconfirmed'
-- waits for the confirmation link of a double opt-in list, 'unsubscribed' left the list
-- from the preference centre (a global unsubscribe stays a suppression). The audiences
-- helper adds the identical statement in 0026; whichever runs first wins.
ALTER TABLE recipients ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'unconfirmed', 'unsubscribed'));

-- public_id: the unguessable id of the list in the public subscribe URL
-- (`POST /s/{public_id}` on the edge): 122 random bits, not the list's id.
-- opt_in: 'double' sends a confirmation first; the address is mailed by campaigns only
-- once confirmed. confirmation_*: the sender and provider of that confirmation.
-- editable_fields: the merge fields the person may change in the preference centre (and
-- send with the subscribe form). consent_text (+ its version, bumped by the API on every
-- change): what the person agreed to, stamped on each consent record.
ALTER TABLE lists
    ADD COLUMN public_id text NOT NULL DEFAULT replace(gen_random_uuid()::text, '-', ''),
    ADD COLUMN opt_in text NOT NULL DEFAULT 'single' CHECK (opt_in IN ('single', 'double')),
    ADD COLUMN confirmation_provider text,
    ADD COLUMN confirmation_from_email text,
    ADD COLUMN confirmation_from_name text,
    ADD COLUMN editable_fields text[] NOT NULL DEFAULT '{}',
    ADD COLUMN consent_text text NOT NULL DEFAULT '',
    ADD COLUMN consent_text_version integer NOT NULL DEFAULT 1;
CREATE UNIQUE INDEX lists_public_id ON lists (public_id);

-- One row per stated consent: a subscribe form (with IP, user agent, the consent text's
-- version), an API add, an import (one row per import: the rows it brought share it).
-- basis: the legal basis (GDPR art. 6). status: 'pending' until a double opt-in is
-- confirmed, 'refused' when nothing was done (a suppressed address), 'withdrawn' when the
-- person left the list. event_id: the contact.event it came from (replays fold once).
CREATE TABLE consents (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    list_id               uuid NOT NULL,
    email                 text COLLATE "C",
    import_id             uuid,
    basis                 text NOT NULL CHECK (basis IN ('consent', 'contract',
                              'legal_obligation', 'vital_interests', 'public_task',
                              'legitimate_interest')),
    source                text NOT NULL CHECK (length(source) <= 40),
    status                text NOT NULL CHECK (status IN ('pending', 'confirmed', 'given',
                              'refused', 'withdrawn')),
    ip                    text CHECK (length(ip) <= 64),
    user_agent            text CHECK (length(user_agent) <= 512),
    consent_text_version  integer,
    event_id              text UNIQUE CHECK (length(event_id) <= 255),
    -- The confirmation message this consent caused (its idempotency key), if any: a replay
    -- of the event publishes it again, and the dispatcher sends it once.
    confirmation_key      text,
    -- This consent made the person an active member at once (single opt-in): a replay
    -- publishes its `joined` again; a consent of someone already a member does not.
    joined                boolean NOT NULL DEFAULT false,
    -- When the person acted (the edge's time of the post); recorded_at: when it was folded.
    given_at              timestamptz,
    recorded_at           timestamptz NOT NULL DEFAULT now(),
    confirmed_at          timestamptz,
    -- The `confirmed` event that confirmed it: its replay publishes the same `joined` again.
    confirmed_by          text CHECK (length(confirmed_by) <= 255),
    withdrawn_at          timestamptz,
    CHECK (email IS NOT NULL OR import_id IS NOT NULL)
);
CREATE INDEX consents_email ON consents (email, list_id);
CREATE INDEX consents_list ON consents (list_id);

-- The durable "at most one confirmation email per address per hour": the last time one
-- was decided for the address (any list), written in the same transaction as the decision.
CREATE TABLE confirmation_sends (
    email         text COLLATE "C" PRIMARY KEY,
    last_sent_at  timestamptz NOT NULL
);

-- What the edge may read (and nothing else): a list by its public id, and one recipient
-- of a preference-centre link. Display and routing only: every decision is the
-- importer's, on the events the edge publishes.
CREATE VIEW edge_lists AS
    SELECT id, public_id, name, opt_in, editable_fields FROM lists;
CREATE VIEW edge_recipients AS
    SELECT r.id, r.list_id, r.email, r.status, r.fields, l.name AS list_name,
           l.opt_in, l.editable_fields,
           EXISTS (SELECT 1 FROM suppressions s WHERE s.email = r.email) AS suppressed
      FROM recipients r JOIN lists l ON l.id = r.list_id;
