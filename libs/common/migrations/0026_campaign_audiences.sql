-- Issue 15 item 2: campaign audiences. A campaign targets lists and/or segments, minus
-- exclusion lists and segments (libs/common/audience.py builds its SQL).

-- `audience`: {"lists": [uuid], "segments": [uuid], "exclude_lists": [uuid],
-- "exclude_segments": [uuid]}, as the API validated it. NULL: the shorthand of a campaign
-- created with `list_id` alone, i.e. {"lists": [list_id]} (internal services and older rows).
-- `audience_filters`: {"<segment id>": <filter JSON>} of every segment the audience names,
-- copied by the API from `segments` when the audience is set and again when the campaign
-- is scheduled: the scheduler plans from this copy and never reads the API's `segments`.
-- `list_id` stays as the audience's first list (List-Id header, preview, list deletion
-- rules); NULL for an audience of segments only.
ALTER TABLE campaigns
    ADD COLUMN audience jsonb,
    ADD COLUMN audience_filters jsonb;
ALTER TABLE campaigns ALTER COLUMN list_id DROP NOT NULL;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_audience_given
    CHECK (list_id IS NOT NULL OR audience IS NOT NULL);

-- The definition the scheduler planned from (segment filters included), beside its size.
ALTER TABLE campaign_plans ADD COLUMN audience jsonb;

-- Double opt-in (issue 15): a recipient row's subscription status on its list. Campaigns
-- plan only 'active' rows. (The subscriptions branch adds the identical statement in its
-- own migration: whichever runs first adds it, the other does nothing.)
ALTER TABLE recipients ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'unconfirmed', 'unsubscribed'));
