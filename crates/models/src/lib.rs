//! gpt-oss model support.
