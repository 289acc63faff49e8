-- The journal's words, as the code's enums name them (core/src/journal.rs:
-- RunStatus, StageEvent, ItemKey). A value outside them is a bug, refused
-- by the server rather than written.

ALTER TABLE runs ADD CONSTRAINT runs_status_known CHECK (
    status IN ('running', 'paused', 'done', 'failed', 'interrupted', 'rolled_back', 'abandoned'));

ALTER TABLE stage_events ADD CONSTRAINT stage_events_event_known CHECK (
    event IN ('started', 'done', 'failed', 'undo_started', 'undone', 'undo_failed'));

ALTER TABLE item_progress ADD CONSTRAINT item_progress_state_known CHECK (state = 'done');

ALTER TABLE item_progress ADD CONSTRAINT item_progress_item_known CHECK (
    item IN ('schema-rehearsal', 'backup', 'pre-data', 'post-data-started', 'post-data', 'sequences',
             'database-settings', 'written', 'sentinel-grants', 'retire')
    OR item ~ '^(role|table|early|analyze):.'
    OR item ~ '^large-object:[0-9]+$'
    OR item ~ '^large-objects:[0-9]+-[0-9]+$');
