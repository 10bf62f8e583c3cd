pub mod broker;
pub mod faulty;
