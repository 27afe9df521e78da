"""``python -m fleetkeep.connector``: the key connector without the admin CLI's imports.

Same commands as ``fleetkeep key-connector``; it starts in a fraction of the time because it
loads nothing of the server, which suits a small customer-side box or container.
"""

from fleetkeep.connector.cli import connector_app

connector_app(prog_name="fleetkeep key-connector")
