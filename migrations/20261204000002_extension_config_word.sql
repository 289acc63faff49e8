-- The copy journals the rows of the extensions' configuration tables
-- ('extension-config'), carried as pg_dump carries them.

ALTER TABLE item_progress DROP CONSTRAINT item_progress_item_known;

ALTER TABLE item_progress ADD CONSTRAINT item_progress_item_known CHECK (
    item IN ('schema-rehearsal', 'backup', 'pre-data', 'post-data-started', 'post-data', 'sequences',
             'extension-config', 'database-settings', 'written', 'sentinel-grants', 'retire', 'paused')
    OR item ~ '^(role|table|early|analyze):.'
    OR item ~ '^large-object:[0-9]+$'
    OR item ~ '^large-objects:[0-9]+-[0-9]+$');
