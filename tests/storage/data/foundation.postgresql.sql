--
-- PostgreSQL database dump
--


-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: api_key; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.api_key (
    id integer NOT NULL,
    prefix character varying(32) NOT NULL,
    secret_hash character varying(128) NOT NULL,
    owner character varying(128) NOT NULL,
    role character varying(32) NOT NULL,
    create_time timestamp without time zone NOT NULL,
    last_used_time timestamp without time zone,
    revoked boolean NOT NULL
);


--
-- Name: api_key_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.api_key_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: api_key_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.api_key_id_seq OWNED BY public.api_key.id;


--
-- Name: deployment; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.deployment (
    id integer NOT NULL,
    name character varying(128) NOT NULL,
    model_id integer NOT NULL,
    version bigint NOT NULL,
    create_time timestamp without time zone NOT NULL,
    update_time timestamp without time zone NOT NULL
);


--
-- Name: deployment_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.deployment_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: deployment_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.deployment_id_seq OWNED BY public.deployment.id;


--
-- Name: deployment_target; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.deployment_target (
    id integer NOT NULL,
    deployment_id integer NOT NULL,
    server_id integer NOT NULL,
    "position" integer NOT NULL,
    state character varying(32) NOT NULL,
    message text NOT NULL,
    update_time timestamp without time zone NOT NULL
);


--
-- Name: deployment_target_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.deployment_target_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: deployment_target_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.deployment_target_id_seq OWNED BY public.deployment_target.id;


--
-- Name: inference_count; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.inference_count (
    id integer NOT NULL,
    model character varying(128) NOT NULL,
    version bigint NOT NULL,
    count bigint NOT NULL,
    failures bigint NOT NULL,
    last_time timestamp without time zone
);


--
-- Name: inference_count_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.inference_count_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: inference_count_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.inference_count_id_seq OWNED BY public.inference_count.id;


--
-- Name: model; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.model (
    id integer NOT NULL,
    name character varying(128) NOT NULL,
    description text NOT NULL,
    labels text NOT NULL,
    create_time timestamp without time zone NOT NULL,
    update_time timestamp without time zone NOT NULL
);


--
-- Name: model_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.model_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: model_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.model_id_seq OWNED BY public.model.id;


--
-- Name: model_tag; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.model_tag (
    id integer NOT NULL,
    model_id integer NOT NULL,
    tag character varying(64) NOT NULL
);


--
-- Name: model_tag_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.model_tag_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: model_tag_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.model_tag_id_seq OWNED BY public.model_tag.id;


--
-- Name: model_version; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.model_version (
    id integer NOT NULL,
    model_id integer NOT NULL,
    version bigint NOT NULL,
    sha256 character varying(64) NOT NULL,
    size_bytes bigint NOT NULL,
    files text NOT NULL,
    config text NOT NULL,
    upload_id character varying(128) NOT NULL,
    create_time timestamp without time zone NOT NULL
);


--
-- Name: model_version_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.model_version_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: model_version_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.model_version_id_seq OWNED BY public.model_version.id;


--
-- Name: schema_info; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.schema_info (
    id integer NOT NULL,
    version integer NOT NULL
);


--
-- Name: schema_info_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.schema_info_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: schema_info_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.schema_info_id_seq OWNED BY public.schema_info.id;


--
-- Name: server; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.server (
    id integer NOT NULL,
    name character varying(128) NOT NULL,
    address character varying(300) NOT NULL,
    description text NOT NULL,
    labels text NOT NULL,
    embedded boolean NOT NULL,
    shares_repository boolean NOT NULL,
    create_time timestamp without time zone NOT NULL
);


--
-- Name: server_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.server_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: server_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.server_id_seq OWNED BY public.server.id;


--
-- Name: setting; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.setting (
    key character varying(64) NOT NULL,
    value bytea NOT NULL
);


--
-- Name: upload; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.upload (
    upload_id character varying(128) NOT NULL,
    model character varying(128) NOT NULL,
    files text NOT NULL,
    config text NOT NULL,
    manifest_sha256 character varying(64) NOT NULL,
    committed_version bigint NOT NULL,
    create_time timestamp without time zone NOT NULL,
    update_time timestamp without time zone NOT NULL
);


--
-- Name: api_key id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_key ALTER COLUMN id SET DEFAULT nextval('public.api_key_id_seq'::regclass);


--
-- Name: deployment id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.deployment ALTER COLUMN id SET DEFAULT nextval('public.deployment_id_seq'::regclass);


--
-- Name: deployment_target id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.deployment_target ALTER COLUMN id SET DEFAULT nextval('public.deployment_target_id_seq'::regclass);


--
-- Name: inference_count id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.inference_count ALTER COLUMN id SET DEFAULT nextval('public.inference_count_id_seq'::regclass);


--
-- Name: model id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.model ALTER COLUMN id SET DEFAULT nextval('public.model_id_seq'::regclass);


--
-- Name: model_tag id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.model_tag ALTER COLUMN id SET DEFAULT nextval('public.model_tag_id_seq'::regclass);


--
-- Name: model_version id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.model_version ALTER COLUMN id SET DEFAULT nextval('public.model_version_id_seq'::regclass);


--
-- Name: schema_info id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.schema_info ALTER COLUMN id SET DEFAULT nextval('public.schema_info_id_seq'::regclass);


--
-- Name: server id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.server ALTER COLUMN id SET DEFAULT nextval('public.server_id_seq'::regclass);


--
-- Data for Name: api_key; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.api_key VALUES (1, 'oldprefix', 'scrypt$abc', 'admin', 'admin', '2026-11-01 12:00:00', NULL, false);


--
-- Data for Name: deployment; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.deployment VALUES (1, 'resnet', 1, 2, '2026-11-01 12:00:00', '2026-11-01 12:00:00');


--
-- Data for Name: deployment_target; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.deployment_target VALUES (1, 1, 1, 0, 'READY', '', '2026-11-01 12:00:00');
INSERT INTO public.deployment_target VALUES (2, 1, 2, 1, 'READY', '', '2026-11-01 12:00:00');


--
-- Data for Name: inference_count; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.inference_count VALUES (1, 'resnet', 2, 42, 1, '2026-11-01 12:00:00');


--
-- Data for Name: model; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.model VALUES (1, 'resnet', 'image classifier', '{"team": "vision"}', '2026-11-01 12:00:00', '2026-11-01 12:00:00');
INSERT INTO public.model VALUES (2, 'empty', '', '{}', '2026-11-01 12:00:00', '2026-11-01 12:00:00');


--
-- Data for Name: model_tag; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.model_tag VALUES (1, 1, 'prod');
INSERT INTO public.model_tag VALUES (2, 1, 'vision');


--
-- Data for Name: model_version; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.model_version VALUES (1, 1, 1, '000000000000000000000000000000000000000000000000000000000000000b', 10, '[["model.py", 10, "0000000000000000000000000000000000000000000000000000000000000001"]]', 'backend: "python"', 'upload-1', '2026-11-01 12:00:00');
INSERT INTO public.model_version VALUES (2, 1, 2, '000000000000000000000000000000000000000000000000000000000000000c', 20, '[["model.py", 20, "0000000000000000000000000000000000000000000000000000000000000002"]]', 'backend: "python"', 'upload-2', '2026-11-01 12:00:00');


--
-- Data for Name: schema_info; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.schema_info VALUES (1, 3);


--
-- Data for Name: server; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.server VALUES (1, 'local', '127.0.0.1:8001', '', '{}', true, true, '2026-11-01 12:00:00');
INSERT INTO public.server VALUES (2, 'remote', '10.0.0.2:8001', '', '{"zone": "b"}', false, false, '2026-11-01 12:00:00');


--
-- Data for Name: setting; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.setting VALUES ('page_token_secret', '\x0001736563726574ff');


--
-- Data for Name: upload; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.upload VALUES ('upload-1', 'resnet', '[["model.py", 10, "0000000000000000000000000000000000000000000000000000000000000001"]]', 'backend: "python"', '000000000000000000000000000000000000000000000000000000000000000b', 1, '2026-11-01 12:00:00', '2026-11-01 12:00:00');
INSERT INTO public.upload VALUES ('upload-2', 'resnet', '[["model.py", 20, "0000000000000000000000000000000000000000000000000000000000000002"]]', 'backend: "python"', '000000000000000000000000000000000000000000000000000000000000000c', 2, '2026-11-01 12:00:00', '2026-11-01 12:00:00');


--
-- Name: api_key_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.api_key_id_seq', 1, true);


--
-- Name: deployment_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.deployment_id_seq', 1, true);


--
-- Name: deployment_target_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.deployment_target_id_seq', 2, true);


--
-- Name: inference_count_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.inference_count_id_seq', 1, true);


--
-- Name: model_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.model_id_seq', 2, true);


--
-- Name: model_tag_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.model_tag_id_seq', 2, true);


--
-- Name: model_version_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.model_version_id_seq', 2, true);


--
-- Name: schema_info_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.schema_info_id_seq', 1, true);


--
-- Name: server_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.server_id_seq', 2, true);


--
-- Name: api_key api_key_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_key
    ADD CONSTRAINT api_key_pkey PRIMARY KEY (id);


--
-- Name: deployment deployment_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.deployment
    ADD CONSTRAINT deployment_pkey PRIMARY KEY (id);


--
-- Name: deployment_target deployment_target_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.deployment_target
    ADD CONSTRAINT deployment_target_pkey PRIMARY KEY (id);


--
-- Name: inference_count inference_count_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.inference_count
    ADD CONSTRAINT inference_count_pkey PRIMARY KEY (id);


--
-- Name: model model_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.model
    ADD CONSTRAINT model_pkey PRIMARY KEY (id);


--
-- Name: model_tag model_tag_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.model_tag
    ADD CONSTRAINT model_tag_pkey PRIMARY KEY (id);


--
-- Name: model_version model_version_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.model_version
    ADD CONSTRAINT model_version_pkey PRIMARY KEY (id);


--
-- Name: schema_info schema_info_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.schema_info
    ADD CONSTRAINT schema_info_pkey PRIMARY KEY (id);


--
-- Name: server server_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.server
    ADD CONSTRAINT server_pkey PRIMARY KEY (id);


--
-- Name: setting setting_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.setting
    ADD CONSTRAINT setting_pkey PRIMARY KEY (key);


--
-- Name: upload upload_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.upload
    ADD CONSTRAINT upload_pkey PRIMARY KEY (upload_id);


--
-- Name: api_key_prefix; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX api_key_prefix ON public.api_key USING btree (prefix);


--
-- Name: deployment_model_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX deployment_model_id ON public.deployment USING btree (model_id);


--
-- Name: deployment_name; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX deployment_name ON public.deployment USING btree (name);


--
-- Name: deployment_target_deployment_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX deployment_target_deployment_id ON public.deployment_target USING btree (deployment_id);


--
-- Name: deployment_target_deployment_id_server_id; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX deployment_target_deployment_id_server_id ON public.deployment_target USING btree (deployment_id, server_id);


--
-- Name: deployment_target_server_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX deployment_target_server_id ON public.deployment_target USING btree (server_id);


--
-- Name: inference_count_model_version; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX inference_count_model_version ON public.inference_count USING btree (model, version);


--
-- Name: model_name; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX model_name ON public.model USING btree (name);


--
-- Name: model_tag_model_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX model_tag_model_id ON public.model_tag USING btree (model_id);


--
-- Name: model_tag_model_id_tag; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX model_tag_model_id_tag ON public.model_tag USING btree (model_id, tag);


--
-- Name: model_tag_tag; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX model_tag_tag ON public.model_tag USING btree (tag);


--
-- Name: model_version_model_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX model_version_model_id ON public.model_version USING btree (model_id);


--
-- Name: model_version_model_id_version; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX model_version_model_id_version ON public.model_version USING btree (model_id, version);


--
-- Name: model_version_sha256; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX model_version_sha256 ON public.model_version USING btree (sha256);


--
-- Name: server_name; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX server_name ON public.server USING btree (name);


--
-- Name: deployment deployment_model_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.deployment
    ADD CONSTRAINT deployment_model_id_fkey FOREIGN KEY (model_id) REFERENCES public.model(id) ON DELETE RESTRICT;


--
-- Name: deployment_target deployment_target_deployment_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.deployment_target
    ADD CONSTRAINT deployment_target_deployment_id_fkey FOREIGN KEY (deployment_id) REFERENCES public.deployment(id) ON DELETE CASCADE;


--
-- Name: deployment_target deployment_target_server_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.deployment_target
    ADD CONSTRAINT deployment_target_server_id_fkey FOREIGN KEY (server_id) REFERENCES public.server(id) ON DELETE RESTRICT;


--
-- Name: model_tag model_tag_model_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.model_tag
    ADD CONSTRAINT model_tag_model_id_fkey FOREIGN KEY (model_id) REFERENCES public.model(id) ON DELETE CASCADE;


--
-- Name: model_version model_version_model_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.model_version
    ADD CONSTRAINT model_version_model_id_fkey FOREIGN KEY (model_id) REFERENCES public.model(id) ON DELETE CASCADE;


--
-- PostgreSQL database dump complete
--


