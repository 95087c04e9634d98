//! SigV4 with the payload's SHA-256 given, not computed: a CAS blob's key
//! is the SHA-256 of its bytes, verified before it reached this store, and
//! signing over plain HTTP (`sign_payload`) would otherwise hash every byte
//! of every put once more (a chunked write's third pass over its bytes).

use aws_runtime::auth::PayloadSigningOverride;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// Tells the signer the body's SHA-256 (lowercase hex). S3 still checks it
/// against the bytes it receives: a wrong one fails the put, it never
/// stores a body under a hash it does not have.
#[derive(Debug)]
pub(super) struct KnownPayloadHash(pub(super) String);

impl Intercept for KnownPayloadHash {
    fn name(&self) -> &'static str {
        "KnownPayloadHash"
    }

    fn modify_before_signing(
        &self,
        _context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::Precomputed(self.0.clone()));
        Ok(())
    }
}
