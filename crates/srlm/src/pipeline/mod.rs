//! `srlm run`'s machinery: the config (`config`) and its check before anything runs
//! (`check`), where a run's files live (`layout`), the stages planned from the config as typed
//! calls of srlm's commands (`plan`, `stage_call`), their command lines (`argv`), the seed
//! stage (`seed`), the servers a run launches (`servers`) and the external trainers it calls
//! (`external_trainer`), both owned so that none outlives the run (`children`), the inputs'
//! hashes (`input_hash`), and the manifest that records and skips finished stages
//! (`manifest`).

pub mod argv;
pub mod check;
pub mod children;
pub mod config;
pub mod external_trainer;
pub mod input_hash;
pub mod layout;
pub mod manifest;
pub mod plan;
pub mod seed;
pub mod servers;
pub mod stage_call;
