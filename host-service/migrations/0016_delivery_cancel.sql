-- A person stopped the answer to this delivery (`user:<name>`). Kept until the agent settles
-- it, so an agent that was away when it was stopped learns it when its stream comes back.
ALTER TABLE deliveries ADD COLUMN cancelled_by TEXT;
