"""twincast: a few minutes of footage become a live, lip-synced digital twin streamed over WebRTC.

The stages live in their own top-level packages (``avatar → model → export → engines → stream``); this
package holds only what all of them share (errors, atomic files, config loading) and the CLI entry point.
"""

__version__ = "0.1.0"
