//! BuildGrid's own client, `bgd execute command`, against kiln with a worker.
