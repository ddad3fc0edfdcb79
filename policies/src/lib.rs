//! Airlock policy: the Cedar schema, base policies and the decision engine.
