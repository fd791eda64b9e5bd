//! The floors of the HTTP and gRPC rows, served by a `bench-server` process: an axum route
//! that returns the body it got, and the Open Inference Protocol's tonic service answering
//! every call at once and empty. They show what the HTTP and gRPC stacks cost by
//! themselves, so the front's rows show what qnllm adds.

use qnllm_front::pb::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use qnllm_front::pb::{self, ModelInferRequest};
use tonic::{Request, Response, Status};

use crate::error::BenchError;
use crate::server::{announce, forever};

/// The path the axum echo answers on.
pub(crate) const ECHO_PATH: &str = "/echo";

/// The protocol's gRPC service, answering every call at once and empty.
#[derive(Debug)]
struct Empty;

#[tonic::async_trait]
impl GrpcInferenceService for Empty {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }
    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: true }))
    }
    async fn model_ready(
        &self,
        _: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        Ok(Response::new(pb::ModelReadyResponse { ready: true }))
    }
    async fn model_statistics(
        &self,
        _: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        Ok(Response::new(pb::ModelStatisticsResponse::default()))
    }
    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse::default()))
    }
    async fn model_metadata(
        &self,
        _: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        Ok(Response::new(pb::ModelMetadataResponse::default()))
    }
    async fn model_infer(
        &self,
        _: Request<ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        Ok(Response::new(pb::ModelInferResponse::default()))
    }
}

/// Serves both floors on loopback and prints `http ADDR` and `grpc ADDR`.
pub(crate) async fn serve() -> Result<(), BenchError> {
    let bind = |what| {
        move |e: std::io::Error| BenchError::Io {
            what: format!("cannot listen for the {what}"),
            source: e,
        }
    };
    let echo = axum::Router::new().route(
        ECHO_PATH,
        axum::routing::post(|body: axum::body::Bytes| async move { body }),
    );
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(bind("axum echo"))?;
    let http_addr = http.local_addr().map_err(bind("axum echo"))?;
    tokio::spawn(async move { axum::serve(http, echo).await });
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(bind("tonic service"))?;
    let grpc_addr = grpc.local_addr().map_err(bind("tonic service"))?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GrpcInferenceServiceServer::new(Empty))
            // Replies go out at once, as a tuned server's do (no Nagle delay on small writes).
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
            ),
    );
    announce(&[
        ("http", http_addr.to_string()),
        ("grpc", grpc_addr.to_string()),
    ])?;
    forever().await
}
