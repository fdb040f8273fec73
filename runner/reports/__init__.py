"""Reading transcripts back: summary and text table, JUnit XML, the HTML report, diffs, pricing."""
