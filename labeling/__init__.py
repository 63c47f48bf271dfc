"""Label Studio client, task sync, annotation export, label aggregation and annotator quality."""
