-- ===== api: templates =====
-- A template is a named, versioned subject/HTML/text. Editing its content adds a version;
-- earlier versions stay, so a campaign can name the exact version it was made from.
CREATE TABLE templates (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    description text,
    latest_version int NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE template_versions (
    template_id uuid NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    version     int NOT NULL CHECK (version >= 1),
    subject     text NOT NULL,
    html        text NOT NULL,
    text        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, version)
);

-- Where a campaign's content came from. The content itself is copied into the campaign,
-- so later template edits (or deleting the template) never change a campaign.
ALTER TABLE campaigns
    ADD COLUMN template_id uuid REFERENCES templates (id) ON DELETE SET NULL,
    ADD COLUMN template_version int;
