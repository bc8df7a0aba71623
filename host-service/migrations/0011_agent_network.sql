-- What a container agent's network may reach, chosen at deploy: `internet` (the default: no
-- LAN, host or metadata), `lan` (also private ranges) or `none` (only the host's agent
-- listener, through proxy devices). Agents deployed before this get the default, which the
-- host applies to their containers at its next start.
ALTER TABLE agents ADD COLUMN network TEXT NOT NULL DEFAULT 'internet'
    CHECK (network IN ('internet', 'lan', 'none'));
