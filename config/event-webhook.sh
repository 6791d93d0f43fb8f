#!/bin/sh
# An [events] command: posts each pgpilot event to a chat webhook (Slack, Mattermost, Teams and
# Google Chat accept this {"text": ...} JSON), e.g.
#
#   [events]
#   command = "/etc/pgpilot/event-webhook.sh"
#
# with PGPILOT_WEBHOOK_URL in pgpilot's environment (systemd: Environment= or an
# EnvironmentFile=). pgpilot runs it once per event, one at a time, and kills it after 10 s.
set -eu
: "${PGPILOT_WEBHOOK_URL:?set PGPILOT_WEBHOOK_URL to the webhook address}"
text="pgpilot on $(hostname): ${PGPILOT_EVENT} ${PGPILOT_BACKEND:-} at ${PGPILOT_TIME}: ${PGPILOT_CAUSE}"
# JSON-escape backslashes and double quotes; drop control characters.
escaped=$(printf '%s' "$text" | tr -d '\000-\037' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')
curl --silent --show-error --fail --max-time 8 \
  -H 'Content-Type: application/json' \
  -d "{\"text\": \"${escaped}\"}" \
  "$PGPILOT_WEBHOOK_URL" >/dev/null
