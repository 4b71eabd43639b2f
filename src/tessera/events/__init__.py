"""Events: the internal envelope, the CloudEvents and Segment-spec mappings."""
