"""OpenVINO on the CPU (``loader``: compiled models; ``runner``: ``OpenVINORunner``)."""
