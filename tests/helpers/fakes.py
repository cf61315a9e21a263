"""Stand-ins for the CLI's services when tests call stages directly."""


class RecordingWriter:
    """A MetricWriter that keeps (step, metrics) rows in memory."""

    def __init__(self):
        self.rows = []
        self.last = {}

    def scalars(self, step, metrics):
        self.rows.append((step, dict(metrics)))
        self.last.update(metrics)

    def image(self, step, name, image):
        pass

    def close(self):
        pass
