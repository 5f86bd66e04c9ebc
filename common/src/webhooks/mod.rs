//! Completion webhooks: what a tenant's endpoints are sent when its jobs, responses and batches
//! end. So far: [`signing`], the Standard Webhooks signature every delivery carries.

pub mod signing;
