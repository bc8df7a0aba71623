-- A refresh whose answer was lost in transit must not cost the device its pairing. Tokens issued
-- together (an access token and its refresh token) share an issue id; a used refresh token names
-- the issue it was exchanged for. When a used refresh token comes back and nothing of that issue
-- was ever used, the answer never arrived: the issue is retired and a new one made. Anything
-- else is a replay, and revokes the device as before. Access tokens record their first use.
ALTER TABLE device_tokens ADD COLUMN issue_id TEXT;
ALTER TABLE device_tokens ADD COLUMN successor TEXT;
CREATE INDEX device_tokens_issue ON device_tokens(issue_id);
