//! The one tower `Layer` all edge concerns share. Each concern keeps some
//! state (an authenticator, limiters, its metrics) and wraps every service
//! with a clone of it; what differs is only its `Service` impl, written for
//! `Edge<S, ItsState>`, so no concern repeats the Layer boilerplate.

use tower::Layer;

/// Wraps services in [`Edge`] with a clone of `state`.
#[derive(Debug, Clone)]
pub struct EdgeLayer<T> {
    state: T,
}

impl<T> EdgeLayer<T> {
    /// A layer handing `state` to every service it wraps.
    pub fn new(state: T) -> Self {
        EdgeLayer { state }
    }
}

/// A service wrapped by an edge concern whose state is `T`.
#[derive(Debug, Clone)]
pub struct Edge<S, T> {
    pub(super) inner: S,
    pub(super) state: T,
}

impl<S, T: Clone> Layer<S> for EdgeLayer<T> {
    type Service = Edge<S, T>;
    fn layer(&self, inner: S) -> Edge<S, T> {
        Edge {
            inner,
            state: self.state.clone(),
        }
    }
}
