-- The online mode's switch journals the applications' pause ('paused',
-- its start in the detail) so that an attempt killed inside the pause
-- still reports the pause's whole length.

ALTER TABLE item_progress DROP CONSTRAINT item_progress_item_known;

ALTER TABLE item_progress ADD CONSTRAINT item_progress_item_known CHECK (
    item IN ('schema-rehearsal', 'backup', 'pre-data', 'post-data-started', 'post-data', 'sequences',
             'database-settings', 'written', 'sentinel-grants', 'retire', 'paused')
    OR item ~ '^(role|table|early|analyze):.'
    OR item ~ '^large-object:[0-9]+$'
    OR item ~ '^large-objects:[0-9]+-[0-9]+$');
