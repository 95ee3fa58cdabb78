//! `netc compile --emit clif`: placeholder replaced below.
