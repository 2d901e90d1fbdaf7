-- Why a campaign is paused, and who paused it: `admin` (the API), or `provider` / `guard`
-- (a pause asked for on `campaign.control` and applied by the scheduler). Cleared on resume.
ALTER TABLE campaigns
    ADD COLUMN pause_reason text,
    ADD COLUMN paused_by text CHECK (paused_by IN ('admin', 'provider', 'guard'));
