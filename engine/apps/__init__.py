"""Apps: containers the fleet spec declares, deployed and rolled out through the agents.

versions   what a version of an app is: its definition, digest, containers (pure)
diff       apps as they run against the spec -> app changes and rollout order (pure)
rollout    a rollout as a state machine that a crash can stop and a re-run resume (pure)
observe    what runs where, asked of the agents (the state store's record as fallback)
servers    one server's part of a rollout, through its agent: image, start, health
deploy     `engine deploy` and the apps step of `engine up`: rollouts carried out
day2       `engine logs`, `engine apps status|history|rollback`
"""
